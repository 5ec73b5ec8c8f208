"""Missions: dependency-aware work graphs driven to completion by the daemon.

Modules (one concept each):
  model      tt's MissionRun / WorkItem / WatchItem / MissionControlMessage records + validators
  compile    mission file (YAML) → validated graph;  github: `gh` issue source
  scheduler  PURE tick: control notes → watches → reconcile → promote → assign → bookkeeping
  storage    tt's keys and shapes; daemon bookkeeping under tt:<town>:tinytownd:mission:…
  lease      tt's dispatch_lock protocol with renewal and fencing
  watches    PR/CI watches through `gh` and offline command watches
  engine     MissionEngine(Component): the daemon services
"""
