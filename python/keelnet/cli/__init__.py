"""The `keelnet` command line: Docker's verbs, flags and output.

One module per noun (`network`, `sandbox`, `port`, `agent`, `plugin`, `system`), as
Docker's CLI keeps `cli/command/network/*.go`; each adds its verbs with `add_commands`.
`root` holds the global flags and decides where a command runs (in the agent or in this
process).

This module imports next to nothing: `keelnet --version` costs an interpreter start, and
a command line a running agent can take goes to it as it is, before any parsing here
(the agent parses it, and its usage errors and help come back like its output).
"""

from __future__ import annotations

import os
import sys

#: Nouns whose commands the agent runs.
AGENT_NOUNS = ("network", "sandbox", "port", "system")
#: ...but these are parsed here: `sandbox exec` runs here with the caller's terminal,
#: `network prune` asks before it deletes (the agent gets it once answered, or with -f).
_RUN_HERE = ("sandbox", "exec")
_ASKS_FIRST = ("network", "prune")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:
        import keelnet

        print(f"keelnet {keelnet.__version__}")
        return 0
    status = _in_agent(argv)
    if status is not None:
        return status
    from keelnet.cli.root import run

    return run(argv)


class CommandLine:
    """What a command line names before any parsing: the global flags, then the words
    (noun, verb, arguments); `parsed_here` when a global option other than those two
    comes first (--help, --version, a mistake), which argparse must handle."""

    def __init__(self, argv: list[str]) -> None:
        self.netns: str | None = None
        self.state_dir: str | None = None
        self.words: list[str] = []
        self.parsed_here = False
        tokens = iter(argv)
        for token in tokens:
            name, has_value, value = token.partition("=")
            if name in ("--netns", "--state-dir", "--store") and not self.words:
                value = value if has_value else next(tokens, "")
                if name == "--netns":
                    self.netns = value
                elif name == "--state-dir":
                    self.state_dir = value
            elif token.startswith("-") and not self.words:
                self.parsed_here = True
                return
            else:
                self.words.append(token)

    @property
    def noun(self) -> str | None:
        return self.words[0] if self.words else None


def forward(netns: str | None, state_dir: str | None, argv: list[str]) -> int | None:
    """Run the command line in the agent serving this host and print what it printed;
    its exit status, None when no agent serves the host."""
    from keelnet import agent

    answer = agent.forward(netns, state_dir, argv)
    if answer is None:
        return None
    status, out, err = answer
    sys.stdout.write(out)
    sys.stderr.write(err)
    return status


def _in_agent(argv: list[str]) -> int | None:
    """Hand the command line to this host's agent if one serves it (its exit status);
    None: this process parses and runs it (it also reports any trouble reaching the agent)."""
    line = CommandLine(argv)
    words = line.words
    if line.parsed_here or len(words) < 2 or words[0] not in AGENT_NOUNS or os.geteuid() != 0:
        return None
    verb = (words[0], words[1])
    if verb == _RUN_HERE or (verb == _ASKS_FIRST and not {"-f", "--force"} & set(words)):
        return None
    try:
        return forward(line.netns, line.state_dir, argv)
    except Exception:
        return None


__all__ = ["main"]
