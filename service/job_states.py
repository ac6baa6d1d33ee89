"""The states a job never leaves: shared by the store, the server and its clients."""

from protos.distillery.v1 import distillery_pb2 as pb

TERMINAL_STATES = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
