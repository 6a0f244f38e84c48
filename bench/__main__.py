"""`python -m bench NAME`: run one benchmark and print its JSON figures on stdout."""
import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))
    if len(sys.argv) != 2 or sys.argv[1] not in names:
        print(f"usage: python -m bench NAME   (NAME: {', '.join(names)})", file=sys.stderr)
        return 2
    importlib.import_module(f"bench.{sys.argv[1]}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
