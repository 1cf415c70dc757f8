"""The native transcoder's tests under a memory checker: exit 1 on a memory error in its code.

``native/transcode.c`` runs on the ingest and replay hot path with the GIL released; a
write past a buffer there would not fail a test, it would corrupt the heap and abort some
later ``free()`` (``malloc_consolidate(): unaligned fastbin chunk detected``). This runs the
tests that drive it (tests/unit/test_native_batch.py and tests/unit/test_transcoder.py:
hostile, mutated and random payloads, buffer growth, malformed plans) against a fresh build
of the current source, in a copy of the checkout (the checkout's own build is not touched):

- ``--tool asan`` (default, ~12 s): the extension built with AddressSanitizer, libasan
  preloaded, ``PYTHONMALLOC=malloc`` so every allocation is checked. Any report fails.
- ``--tool valgrind`` (~3 min): memcheck. The interpreter itself reports uninitialised
  values and over-reads in valgrind (startup, gc, _json); only errors whose stack passes
  through the extension count, the others are summed up.

    python -m bench.native_memcheck                 # ASan
    python -m bench.native_memcheck --tool valgrind
    python -m bench.native_memcheck --tool valgrind -- -k big_one   # pytest arguments after --

Exit status: 0 clean, 1 a memory error (or a failing test), 2 the tool is not installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/unit/test_native_batch.py", "tests/unit/test_transcoder.py"]
OURS = re.compile(r"transcode\.c|_transcode")


def _copy_checkout(dest: Path) -> None:
    """The tracked files as they are now (edits included), links kept as links."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src, dst = ROOT / name, dest / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)


def _build(tree: Path, cflags: str) -> None:
    env = {**os.environ, "CFLAGS": cflags, "LDFLAGS": "-fsanitize=address" if "sanitize" in cflags else ""}
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"native_memcheck: building the extension failed:\n{done.stdout}{done.stderr}")


def _valgrind_errors(log: str) -> tuple[list[str], int]:
    """(the error blocks whose stack passes through the extension, how many others)."""
    blocks = re.split(r"\n==\d+== \n", log)
    errors = [b for b in blocks if re.search(r"==\d+== (Invalid|Conditional|Use of|Mismatched|Source and|Syscall)", b)]
    ours = [b for b in errors if OURS.search(b)]
    return ours, len(errors) - len(ours)


def run(tool: str, pytest_args: list[str]) -> int:
    if shutil.which("gcc") is None or (tool == "valgrind" and shutil.which("valgrind") is None):
        print(f"native_memcheck: error: {tool} (and gcc) must be installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="native-memcheck-") as tmp:
        tree = Path(tmp) / "tree"
        _copy_checkout(tree)
        env = {**os.environ, "PYTHONMALLOC": "malloc", "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, *pytest_args]
        if tool == "asan":
            _build(tree, "-fsanitize=address -fno-omit-frame-pointer -g -O1")
            libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout
            asan_log = Path(tmp) / "asan"  # a file: pytest captures fd 2 while a test runs
            env |= {"LD_PRELOAD": libasan.strip(),
                    "ASAN_OPTIONS": f"detect_leaks=0:halt_on_error=1:exitcode=99:log_path={asan_log}"}  # fmt: skip
        else:
            _build(tree, "-g -O2")
            log_file = Path(tmp) / "valgrind.log"
            cmd = ["valgrind", "--errors-for-leak-kinds=none", "--num-callers=30", f"--log-file={log_file}", *cmd]
        started = time.monotonic()
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        took = time.monotonic() - started
        print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "(no pytest output)")
        if tool == "asan":
            report = "".join(f.read_text() for f in sorted(Path(tmp).glob("asan.*")))
            if report:
                print(report[:6000], file=sys.stderr)
            bad = bool(report) or done.returncode != 0
        else:
            ours, others = _valgrind_errors(log_file.read_text())
            for block in ours[:5]:
                print(block, file=sys.stderr)
            print(f"valgrind: {len(ours)} error(s) through the extension; {others} in the interpreter or other "
                  "libraries (not counted)")  # fmt: skip
            bad = bool(ours) or done.returncode != 0
        if done.returncode != 0:  # a failing test, or the checker's exit: pytest's own words
            print(done.stdout[-4000:], file=sys.stderr)
        print(f"native_memcheck ({tool}): {'FAILED' if bad else 'clean'} in {took:.0f} s")
        return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.native_memcheck", description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to pytest (e.g. -- -k mutated).",
    )  # fmt: skip
    parser.add_argument("--tool", choices=["asan", "valgrind"], default="asan",
                        help="AddressSanitizer build (fast, default) or valgrind memcheck (about 3 min)")  # fmt: skip
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)} (pytest arguments go after --)")
    return run(args.tool, rest)


if __name__ == "__main__":
    sys.exit(main())
