#!/usr/bin/env python3
"""Every `moirai ...` and `moirai-agent ...` command shown in README.md and docs/*.md still
parses: its subcommand exists and every --flag it names is one that subcommand's --help
lists. With --run-main, first runs the README's main command (its first ```sh block: the
build and the demo) and requires exit status 0.

    python3 docs/check_commands.py [--bin-dir target/debug] [--run-main]

Prints one line per problem (file:line, command, what is wrong); exits 1 if there is any.
"""
import argparse
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CMD = re.compile(r"^(?:\S*target/(?:debug|release)/)?(moirai-agent|moirai)(?:\s+(.*))?$")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def pages():
    yield ROOT / "README.md"
    yield from sorted((ROOT / "docs").glob("*.md"))


def commands(path):
    """(line number, binary, rest of the line) for each command shown in a page."""
    fenced = False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        spans = [line] if fenced else re.findall(r"`([^`]+)`", line)
        for span in spans:
            # A command starts a line, a code span, or a piece after && ; |
            for piece in re.split(r"&&|;|\|\|?", span):
                m = CMD.match(piece.strip().removeprefix("$ "))
                if m:
                    yield n, m.group(1), m.group(2) or ""


def readme_main_command():
    """The first ```sh block of README.md: the main job."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"```sh\n(.*?)\n```", text, re.S)
    if not m:
        sys.exit("README.md has no ```sh block")
    return m.group(1).strip()


def help_text(bin_dir, binary, sub, cache):
    key = (binary, sub)
    if key not in cache:
        argv = [str(bin_dir / binary)] + ([sub] if sub else []) + ["--help"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        cache[key] = r.stdout if r.returncode == 0 else None
    return cache[key]


def subcommands(top_help):
    """Subcommand names from a clap top-level --help."""
    names, inside = set(), False
    for line in top_help.splitlines():
        if line.startswith("Commands:"):
            inside = True
            continue
        if inside:
            if not line.startswith("  "):
                inside = False
                continue
            names.add(line.split()[0])
    return names


def run_main(problems):
    """Runs the README's main command (it builds the binaries this check then asks)."""
    main_cmd = readme_main_command()
    r = subprocess.run(["bash", "-c", main_cmd], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    last = (r.stdout.strip().splitlines() or [""])[-1]
    print(f"README main command `{main_cmd}`: exit {r.returncode}: {last}")
    if r.returncode != 0:
        problems.append(f"README.md: the main command exited {r.returncode}:\n{r.stderr[-2000:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "debug"))
    ap.add_argument("--run-main", action="store_true")
    a = ap.parse_args()
    bin_dir = pathlib.Path(a.bin_dir)
    cache, problems, checked = {}, [], 0
    if a.run_main:
        run_main(problems)
    subs = {}
    for binary in ("moirai", "moirai-agent"):
        top = help_text(bin_dir, binary, None, cache)
        if top is None:
            sys.exit(f"{bin_dir / binary} --help failed: build the binaries first")
        subs[binary] = subcommands(top)
    for page in pages():
        rel = page.relative_to(ROOT)
        for n, binary, rest in commands(page):
            words = rest.split()
            sub = words[0] if words and not words[0].startswith("-") else None
            if sub is not None and sub not in subs[binary]:
                if re.fullmatch(r"[a-z][a-z-]*", sub) and sub not in ("demo-out",):
                    problems.append(f"{rel}:{n}: `{binary} {sub}`: no such subcommand")
                continue
            text = help_text(bin_dir, binary, sub, cache)
            if text is None:
                problems.append(f"{rel}:{n}: `{binary} {sub or ''} --help` fails")
                continue
            for flag in FLAG.findall(rest):
                if flag in ("--help", "--version"):
                    continue
                if not re.search(re.escape(flag) + r"(?![\w-])", text):
                    problems.append(f"{rel}:{n}: `{binary} {sub or ''}` has no {flag}")
            checked += 1
    for p in problems:
        print(p)
    print(f"{checked} commands in README.md and docs/ checked, {len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
