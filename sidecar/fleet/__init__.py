"""Fleets: many sidecar replicas converging on one serving state through etcd.

So far the foundation only: `sidecar.fleet.etcd`, the etcd v3 client (KV with
compare-and-swap, leases kept alive, gap-free watches), over our own minimal
etcd.proto (`sidecar.fleet.proto`, generated from proto/sidecar/fleet/proto).
"""
