"""Copies generated reports into README.md, so its numbers are never typed by hand.

    python benchmarks/readme_blocks.py

Every block ``<!-- begin: PATH -->`` ... ``<!-- end: PATH -->`` in README.md is
replaced by the current contents of PATH (a report a benchmark wrote), with its
top-level heading dropped and image links made relative to the repository root.
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(<!-- begin: (\S+) -->\n).*?(<!-- end: \2 -->)", re.S)


def render(path):
    text = open(os.path.join(ROOT, path)).read()
    lines = [l for l in text.splitlines() if not l.startswith("# ")]
    # The blocks sit under ### headings: push the report's own headings below them.
    lines = ["##" + l if l.startswith("##") else l for l in lines]
    folder = os.path.dirname(path)
    body = "\n".join(lines).strip()
    body = re.sub(r"!\[([^\]]*)\]\((?!/|http)([^)]+)\)",
                  lambda m: f"![{m.group(1)}]({folder}/{m.group(2)})", body)
    return body + "\n"


def main():
    readme = os.path.join(ROOT, "README.md")
    text = open(readme).read()
    updated = BLOCK.sub(lambda m: m.group(1) + render(m.group(2)) + m.group(3), text)
    with open(readme, "w") as f:
        f.write(updated)
    print("README blocks:", ", ".join(m.group(2) for m in BLOCK.finditer(updated)) or "none")


if __name__ == "__main__":
    main()
