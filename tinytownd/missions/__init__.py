"""Missions: dependency-aware work graphs driven to completion by the daemon.

Records (tt's JSON shapes exactly; pure):
  fields        reading and writing record fields the way tt does
  mission       Mission (tt's MissionRun), MissionPolicy, objectives, MissionControlMessage
  work          WorkItem, and the tags that bind a tt task to one
  watch         WatchItem, CommandWatch, PR references
  validate      strict record checks (used by tests)
Sources (pure apart from reading files / calling gh):
  compile       mission file (YAML) → validated graph → records
  github        GitHub issues as a source
The tick (pure; tested without Redis):
  tick          TickInput / TickOutput and the state the steps share
  scheduler     run_tick: the order of the steps; reconcile, promote, assign, bookkeeping
  controls      control notes (resume, pause, redirect)
  submissions   submitted work → PR watches, review gate, fix tasks → done
  scoring       ranking agents for a work item
I/O:
  watch_checks  checking due watches (gh, commands), outside the transaction
  storage       MissionStore: every read and write of mission keys
  tick_io       one tick in one fenced MULTI/EXEC
  engine        MissionEngine(Component): leases, notifications, dispatch
"""
