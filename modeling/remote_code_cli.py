"""``python -m data2vec_hf.remote_code_cli --write | --check`` (``make remote-code`` writes): regenerate
the committed remote-code files (``modeling/remote-code/``) from the package source, or check that they
are up to date — exit status 1 and a diff where regenerating would change a byte. See ``remote_code.py``
and docs/remote_code.md.

(A module of its own: ``python -m data2vec_hf.remote_code`` would run a second copy of a module that
``import data2vec_hf`` has already imported, which Python warns about.)
"""

from __future__ import annotations

import argparse
import difflib
import sys

from .remote_code import FOLDER, RemoteCodeError, generate_all, stale_files, write_files

DIFF_LINES = 60  # of each stale file's diff, in --check's report


def _diff(name: str, generated: dict[str, str]) -> str:
    path = FOLDER / name
    old = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []
    new = generated.get(name, "").splitlines(keepends=True)
    lines = list(difflib.unified_diff(old, new, f"committed/{name}", f"generated/{name}"))
    more = [f"... ({len(lines) - DIFF_LINES} more diff lines)\n"] if len(lines) > DIFF_LINES else []
    return "".join(lines[:DIFF_LINES] + more) or f"{name}: line endings or encoding differ\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data2vec_hf.remote_code_cli",
        description=f"Regenerate or check the committed remote-code files in {FOLDER}.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the files that regenerating changes")
    action.add_argument("--check", action="store_true", help="exit 1, with a diff, if any file is stale")
    args = parser.parse_args(argv)
    try:
        generated = generate_all()
    except RemoteCodeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.write:
        changed = write_files(generated, FOLDER)
        print(f"{FOLDER}: " + (f"rewrote {', '.join(changed)}" if changed else "up to date"))
        return 0
    stale = stale_files(generated, FOLDER)
    if not stale:
        print(f"{FOLDER}: up to date ({len(generated)} files)")
        return 0
    for name in stale:
        sys.stdout.write(_diff(name, generated))
    print(f"\n{FOLDER}: {len(stale)} file(s) stale; regenerate them with `make remote-code`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
