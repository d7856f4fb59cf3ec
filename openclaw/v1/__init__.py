"""Generated gRPC and protobuf code for openclaw.v1 (made by `make proto`; do not edit)."""
