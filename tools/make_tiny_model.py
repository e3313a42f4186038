"""Write a tiny random-weight diffusers pipeline folder, usable as ``pdmtrack ... --model PATH``.

python tools/make_tiny_model.py ./tiny-sdxl                 # SDXL-shaped (two text encoders)
python tools/make_tiny_model.py ./tiny-sd --family sd --seed 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pdmtrack.testing.diffusion import build_tiny_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="folder to create (must not exist or be empty)")
    parser.add_argument("--family", choices=("sdxl", "sd"), default="sdxl", help="block layout to mirror")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    try:
        folder = build_tiny_pipeline(args.path, family=args.family, seed=args.seed)
    except FileExistsError as err:
        parser.error(str(err))
    print(f"tiny {args.family} pipeline written to {folder}")


if __name__ == "__main__":
    main()
