"""Handlers: the transport-free operations (infer, metadata, index, load ...).

They take and return plain dataclasses and numpy arrays; the rpc layer packs
and unpacks protobuf around them.
"""
