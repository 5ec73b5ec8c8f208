"""Checks every tt record of a town under tt's rules (used after runtime, mission and batch tests)."""
from tinytownd.store import validate


def all_records_valid_town(town):
    """Validate every agent/task/message/event record under tt's rules."""
    r, k = town.r, town.keys
    problems = []
    for key in r.scan_iter(match=k.prefix + "*"):
        t = r.type(key)
        if key.startswith(k.daemon_prefix):
            continue
        if key.startswith(k.prefix + "agent:"):
            problems += validate.validate_agent(r.hgetall(key))
        elif key.startswith(k.prefix + "task:"):
            problems += validate.validate_task(r.hgetall(key))
        elif key.startswith((k.prefix + "inbox:", k.prefix + "urgent:")):
            for raw in r.lrange(key, 0, -1):
                problems += validate.validate_message(raw)
        elif t == "stream":
            for _id, fields in r.xrange(key):
                problems += validate.validate_event(fields)
    return problems
