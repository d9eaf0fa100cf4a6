"""Print a command plan as PowerShell that pastes and runs (or as cmd.exe lines on request).

The README's Windows steps use PowerShell, where cmd.exe's ``"C:\\...\\nssm.exe" install``
is a parse error and ``\\"`` inside an argument is mangled. Each command becomes
``& 'program' 'arg' ...`` with single-quoted words (``'`` doubled), which PowerShell passes
unchanged; an argument that itself holds double quotes (nssm's ``AppParameters``) is passed
after ``--%``, PowerShell's stop-parsing token, verbatim in Windows command-line quoting,
the one form that reaches the program intact in Windows PowerShell 5.1 and PowerShell 7
alike.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence

PASSWORD_VARIABLE = "$GuardianPassword"
# Stands in for a service account's password that the printed script asks for itself.
PROMPTED_PASSWORD = "\x00prompted-password"

PASSWORD_PROMPT = (
    "$GuardianPassword = [Runtime.InteropServices.Marshal]::PtrToStringBSTR("
    "[Runtime.InteropServices.Marshal]::SecureStringToBSTR("
    "(Read-Host -AsSecureString 'Password of {account}')))"
)


def quote(word: str) -> str:
    """A PowerShell single-quoted literal: nothing inside is expanded."""
    return "'" + word.replace("'", "''") + "'"


def command_line(argv: Sequence[str]) -> str:
    """One PowerShell line running ``argv``."""
    program, *args = argv
    if any('"' in a for a in args):
        # Only %NAME% is expanded after --%; a config path never holds one, refuse anyway.
        if any("%" in a for a in args):
            raise ValueError(f"cannot pass {args!r} through PowerShell's --% safely")
        return f"& {quote(program)} --% {subprocess.list2cmdline(list(args))}"
    words = [PASSWORD_VARIABLE if a == PROMPTED_PASSWORD else quote(a) for a in args]
    return " ".join(["&", quote(program), *words])


def script(plan: Sequence[Sequence[str]], *, account: str | None = None,
           may_fail: Iterable[int] = ()) -> list[str]:
    """The plan as PowerShell lines, stopping at the first failing command.

    ``account``: the plan sets this account with :data:`PROMPTED_PASSWORD`, so the script
    first asks for its password (hidden) instead of printing or storing one.
    ``may_fail``: indices of commands whose failure is expected (stopping a stopped service).
    """
    tolerated = set(may_fail)
    lines = ["# PowerShell (as Administrator). cmd.exe syntax: --shell cmd"]
    if account is not None:
        lines.append(PASSWORD_PROMPT.format(account=account.replace("'", "''")))
    for i, argv in enumerate(plan):
        lines.append(command_line(argv))
        if i not in tolerated:
            lines.append("if ($LASTEXITCODE -ne 0) { throw \"failed (exit $LASTEXITCODE)\" }")
    return lines


def cmd_lines(plan: Sequence[Sequence[str]]) -> list[str]:
    """The plan in cmd.exe syntax (``--shell cmd``).

    cmd.exe cannot ask for a password without showing it, and a placeholder such as
    ``<password>`` is a redirection there: a step that needs the password is printed as a
    ``REM`` to type by hand, so pasting the lines leaves the service on LocalSystem instead
    of setting an account it cannot log on with.
    """
    lines: list[str] = []
    for argv in plan:
        if PROMPTED_PASSWORD in argv:
            shown = ["PASSWORD" if a == PROMPTED_PASSWORD else a for a in argv]
            lines.append("REM last step, by hand, with the account's password for PASSWORD:")
            lines.append("REM " + subprocess.list2cmdline(shown))
            continue
        lines.append(subprocess.list2cmdline(list(argv)))
    return lines
