"""The private descriptor pool of the generated modules here (see protos/generate.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
