"""The shell commands that README.md and docs/*.md show, collected as a user would copy them.

Every line of a ```bash / ```sh block is one step: backslash continuations are joined,
comments dropped, and a ``cat > FILE <<'END'`` here-document becomes a file to write. Each
step gets a kind: ``pdmtrack`` (run through the CLI), ``python`` (run with this
interpreter), ``copy`` (``cp SOURCE TARGET``), ``file`` (a here-document), or ``skip`` with the reason it cannot run in the
tests. A line the collector does not know is an error, so nothing shown is silently passed by.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

SHELL_FENCES = ("```bash", "```sh", "```shell")
HEREDOC = re.compile(r"^cat\s+>\s*(\S+)\s+<<\s*'?(\w+)'?\s*$")
# Steps that need what a test machine does not have; each names its reason.
SKIPPED_PROGRAMS = {"ray": "starts or joins a Ray cluster on the user's machines (the tests run Ray locally through --workers)"}
SKIPPED_FLAGS = {"--ray-address": "joins a running Ray cluster started with `ray start`; --workers alone is run"}
VOC_TOO_SLOW = (
    "builds OVDiff prototypes of PASCAL VOC's 20 classes from 64 support images each (1,280 "
    "images at 512x512 with SAM): about 20 minutes on a 2-core CPU even with the tiny model; "
    "tests/test_cli_ovdiff.py::test_eval_voc_end_to_end runs it with --support 1"
)
SKIPPED_COMMANDS = {"pdmtrack eval voc": VOC_TOO_SLOW}
SKIPPED_SCRIPTS = {
    "benchmarks/": "a benchmark (minutes to hours; run by hand, figures in the docs)",
    "-m venv": "the install command: CI runs it from nothing (.ci/run)",
    "-m pytest": "the test command itself: CI runs it (.ci/run)",
}


@dataclass(frozen=True)
class DocStep:
    """One step of a document: where it stands, its text and what the harness does with it."""

    doc: Path
    line: int
    text: str
    kind: str  # pdmtrack | python | copy | file | skip
    body: str = ""  # the here-document's content (kind "file")
    reason: str = ""  # why it is not run (kind "skip")

    @property
    def id(self) -> str:
        return f"{self.doc.name}:{self.line}"

    def argv(self) -> list[str]:
        """The words of the command, as a POSIX shell splits them."""
        return shlex.split(self.text, comments=True)


def collect_steps(doc: Path) -> list[DocStep]:
    """Every step of every shell block of ``doc``, in document order."""
    steps: list[DocStep] = []
    lines = doc.read_text(encoding="utf-8").splitlines()
    inside = False
    index = 0
    while index < len(lines):
        raw = lines[index]
        stripped = raw.strip()
        if stripped.startswith("```"):
            inside = not inside and stripped in SHELL_FENCES
            index += 1
            continue
        if not inside or not stripped or stripped.startswith("#"):
            index += 1
            continue
        first = index + 1
        text = stripped
        while text.endswith("\\") and index + 1 < len(lines):
            index += 1
            text = text[:-1].rstrip() + " " + lines[index].strip()
        heredoc = HEREDOC.match(text)
        if heredoc:
            end = lines.index(heredoc.group(2), index + 1)
            body = "\n".join(lines[index + 1 : end]) + "\n"
            steps.append(DocStep(doc, first, text, "file", body=body))
            index = end + 1
            continue
        steps.append(_classify(doc, first, text))
        index += 1
    return steps


def _classify(doc: Path, line: int, text: str) -> DocStep:
    words = shlex.split(text, comments=True)
    program = words[0]
    if program in SKIPPED_PROGRAMS:
        return DocStep(doc, line, text, "skip", reason=SKIPPED_PROGRAMS[program])
    if program == "pdmtrack":
        for prefix, reason in SKIPPED_COMMANDS.items():
            if " ".join(words).startswith(prefix):
                return DocStep(doc, line, text, "skip", reason=reason)
        for flag, reason in SKIPPED_FLAGS.items():
            if flag in words:
                return DocStep(doc, line, text, "skip", reason=reason)
        return DocStep(doc, line, text, "pdmtrack")
    if program == "cp":
        return DocStep(doc, line, text, "copy")
    if program in ("python", "python3"):
        for prefix, reason in SKIPPED_SCRIPTS.items():
            if " ".join(words[1:]).startswith(prefix):
                return DocStep(doc, line, text, "skip", reason=reason)
        return DocStep(doc, line, text, "python")
    raise ValueError(f"{doc.name}:{line}: the docs harness does not know how to run '{text}'")
