//! placeholder: the protocol and SDK land with the process backend
