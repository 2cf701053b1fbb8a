"""Copies generated reports into README.md and docs/experiments.md, so their numbers
are never typed by hand.

    python -m benchmarks.readme_blocks

Every block ``<!-- begin: PATH -->`` ... ``<!-- end: PATH -->`` in those files is
replaced by the current contents of PATH (a report a benchmark wrote; PATH is
relative to the repository root), with its top-level heading dropped and its
relative links made relative to the file the block is in. ``PATH#summary`` takes
only the report's opening, up to its first ``##`` section.
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(<!-- begin: (\S+) -->\n).*?(<!-- end: \2 -->)", re.S)
TARGETS = ("README.md", "docs/experiments.md")


def render(block, target="README.md"):
    path, _, part = block.partition("#")
    text = open(os.path.join(ROOT, path)).read()
    if part == "summary":
        text = re.split(r"^## ", text, maxsplit=1, flags=re.M)[0]
    elif part:
        raise ValueError(f"{block}: the only part a block can name is #summary")
    lines = [l for l in text.splitlines() if not l.startswith("# ")]
    # The blocks sit under ### headings: push the report's own headings below them.
    lines = ["##" + l if l.startswith("##") else l for l in lines]
    folder = os.path.dirname(path)
    target_folder = os.path.dirname(target)

    def relink(match):
        link = os.path.relpath(os.path.join(folder, match.group(2)), target_folder or ".")
        return f"{match.group(1)}]({link})"

    body = "\n".join(lines).strip()
    body = re.sub(r"(!?\[[^\]]*)\]\((?!/|#|[a-z]+:)([^)]+)\)", relink, body)
    return body + "\n"


def main():
    for target in TARGETS:
        path = os.path.join(ROOT, target)
        if not os.path.exists(path):
            continue
        text = open(path).read()
        updated = BLOCK.sub(lambda m: m.group(1) + render(m.group(2), target) + m.group(3),
                            text)
        with open(path, "w") as f:
            f.write(updated)
        print(f"{target} blocks:",
              ", ".join(m.group(2) for m in BLOCK.finditer(updated)) or "none")


if __name__ == "__main__":
    main()
