"""Catalog: Huidong's towns and stations; YAML validation and import; queries. The database is the
source of truth at run time, `config/stations.yaml` seeds it."""
