"""`make audit`: the installed packages against PyPI's advisory database, with pip-audit.

pip-audit reports "No known vulnerabilities found" even when it could look nothing up, so the
database is probed first with a release known to have an advisory (requests 2.31.0,
CVE-2024-35195): when that answer carries none, the database is out of reach and the audit is
skipped, saying why, rather than passed.
"""

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

CANARY = "https://pypi.org/pypi/requests/2.31.0/json"


def advisories_reachable() -> str | None:
    """None when PyPI's advisory database answers; otherwise why not."""
    try:
        with urllib.request.urlopen(CANARY, timeout=15) as response:
            document = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"{CANARY} did not answer ({e})"
    if not document.get("vulnerabilities"):
        return f"{CANARY} answered without the advisories it has (a mirror without the vulnerability data?)"
    return None


def main() -> int:
    why_not = advisories_reachable()
    if why_not is not None:
        print(f"audit: skipped: PyPI's advisory database is not reachable from here: {why_not}")
        return 0
    pip_audit = Path(sys.executable).with_name("pip-audit")
    command = [str(pip_audit), "--strict", "--skip-editable", "--progress-spinner", "off"]
    print("audit:", " ".join(command[1:]))
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
