"""The town's data in Redis, as tt reads and writes it; every key, record, event and Lua script.

    wire, keys       tt's encodings and enums; every key, documented before it is used
    records          tt's records (agents, tasks, messages), dead-letter entries; poison checks
    validate         strict checks of what tinytownd writes (the tests run them)
    events           one builder per event type, and the streams each goes on
    fit              which agent may take which task (the one tag rule, tt's role rule)
    town             Town: every write of a tt record; agents.py and tasks.py are its parts
    agent_control    interrupt / resume / close / kill, and how the runtime reacts
    leases           one lease implementation (agents, missions)
    quarantine       keys of the wrong Redis type moved to the dead-letter list
    refusals         Redis refusing a write (out of memory, MISCONF, ...)
    scripts, lua/    the Lua scripts (`--#include` composes them)
"""
