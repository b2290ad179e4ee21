"""Summarise a py-spy collapsed-stack profile (``-f raw``): the functions with the most samples, by
self time and by total (inclusive) time.

    .venv/bin/python -m bench.hotspots PROFILE.txt [--top 25] [--filter controller/]
"""

from __future__ import annotations

import argparse
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--filter", default="", help="only frames whose text contains this")
    args = parser.parse_args()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    with open(args.profile) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            samples += n
            frames = stack.split(";")
            own[frames[-1]] += n
            for frame in set(frames):
                if args.filter in frame:
                    total[frame] += n
    print(f"{samples} samples")
    print("-- self")
    for frame, n in own.most_common(args.top):
        print(f"{n / samples:6.1%}  {frame}")
    print("-- total")
    for frame, n in total.most_common(args.top):
        print(f"{n / samples:6.1%}  {frame}")


if __name__ == "__main__":
    main()
