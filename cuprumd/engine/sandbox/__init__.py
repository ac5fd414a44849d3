"""The Landlock sandbox every stage runs in: policy, ruleset and the restriction.

The allowlist only decides what ``argv[0]`` may be; a program can still run
others, write files it is given names of, or talk to the network. Landlock
makes the allowlist hold for every descendant, because the kernel checks each
``execve``, ``open``, ``connect`` and ``kill`` against a ruleset the process
cannot shed. The rule targets are opened once per daemon (and again on
reload) and each job's ruleset is made from them, so a job pays a handful of
system calls and one ``landlock_restrict_self``, and no file-system walk.

The work is split so that the rules can be tested without a kernel, one
module per step, each importing only modules listed before it:

- ``interpreters`` reads ELF and script headers to find the interpreters a
  program's ``execve`` opens;
- ``landlock`` is the kernel interface: the ABI constants, the system calls,
  ``Ruleset`` and ``restrict_self``;
- ``policy`` turns settings into plain data (``build_policy``) and that into
  ``(path, rights)`` pairs (``policy_rules``);
- ``rulesets`` opens a policy's rule targets and makes the rulesets
  (``Sandbox``, ``create_ruleset``).

The rest of the daemon imports these names from here.
"""

from __future__ import annotations

from cuprumd.engine.sandbox.interpreters import elf_interpreter, shebang_interpreter
from cuprumd.engine.sandbox.landlock import Ruleset, landlock_abi, restrict_self
from cuprumd.engine.sandbox.policy import (
    READ_DEVICES,
    REQUIRED_ABI,
    RISKY_PROGRAMS,
    SYSTEM_READ_PATHS,
    WRITE_DEVICES,
    SandboxMode,
    SandboxPolicy,
    build_policy,
    policy_rules,
    risky_programs,
)
from cuprumd.engine.sandbox.rulesets import Sandbox, create_ruleset, open_sandbox

__all__ = [
    "READ_DEVICES",
    "REQUIRED_ABI",
    "RISKY_PROGRAMS",
    "SYSTEM_READ_PATHS",
    "WRITE_DEVICES",
    "Ruleset",
    "Sandbox",
    "SandboxMode",
    "SandboxPolicy",
    "build_policy",
    "create_ruleset",
    "elf_interpreter",
    "landlock_abi",
    "open_sandbox",
    "policy_rules",
    "restrict_self",
    "risky_programs",
    "shebang_interpreter",
]
