"""`tinytownd batch --junit PATH`: the summary as a JUnit XML report, the format CI systems read
(pure: from the --summary document).

One <testsuite> per batch, one <testcase> per task (classname `tinytownd.batch.<batch id>`, name
the file's task id, time its duration): a failed or cancelled task is a <failure> with its reason
as the message and the result (error and output tail) as the text; a task that did not finish is
<skipped>. Attempts, agent and (with workspaces) branch, base and head are <properties> of the
testcase; the result of a completed task is its <system-out>.
"""
from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET

_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
TEXT_MAX = 16000


def _text(v) -> str:
    s = "" if v is None else str(v)
    return _NOT_XML.sub("\ufffd", s[-TEXT_MAX:])


def _secs(v) -> str:
    return f"{float(v or 0):.3f}"


def report(doc: dict) -> bytes:
    """The JUnit XML document of a --summary document."""
    bid = str(doc.get("batch_id"))
    tasks = doc.get("tasks") or []
    failed = [t for t in tasks if t.get("state") in ("failed", "cancelled")]
    skipped = [t for t in tasks if t.get("state") not in ("failed", "cancelled", "completed")]
    counts = {"tests": str(len(tasks)), "failures": str(len(failed)), "errors": "0",
              "skipped": str(len(skipped)), "time": _secs(doc.get("wall_time_s"))}
    root = ET.Element("testsuites", {"name": f"tinytownd batch {bid}", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": bid, **counts, "hostname":
                                              socket.gethostname(), "timestamp":
                                              _text(_first_start(tasks))})
    props = ET.SubElement(suite, "properties")
    for k in ("mode", "file", "exit_code", "attempts_total", "interrupted"):
        if doc.get(k) is not None:
            ET.SubElement(props, "property", {"name": k, "value": _text(doc[k])})
    for t in tasks:
        case = ET.SubElement(suite, "testcase", {"classname": f"tinytownd.batch.{bid}",
                                                 "name": _text(t.get("id")),
                                                 "time": _secs(t.get("duration_s"))})
        cp = ET.SubElement(case, "properties")
        for k in ("task_id", "state", "attempts", "agent", "branch", "base", "head",
                  "files_changed", "insertions", "deletions"):
            if t.get(k) is not None:
                ET.SubElement(cp, "property", {"name": k, "value": _text(t[k])})
        state = t.get("state")
        result = t.get("result") or t.get("error") or ""
        if state in ("failed", "cancelled"):
            reason = t.get("error") or (result.strip().split("\n", 1)[0] if result else state)
            f = ET.SubElement(case, "failure", {"message": _text(reason)[:1000], "type": state})
            f.text = _text(result)
        elif state != "completed":
            ET.SubElement(case, "skipped", {"message": f"not finished ({_text(state)})"})
        elif result:
            ET.SubElement(case, "system-out").text = _text(result)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _first_start(tasks) -> str:
    starts = sorted(t["started_at"] for t in tasks if t.get("started_at"))
    return starts[0][:19] if starts else ""
