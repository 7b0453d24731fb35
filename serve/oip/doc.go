// Package oip is the Go code generated from the Open Inference Protocol's
// gRPC definition (open_inference_grpc.proto, vendored beside it unchanged;
// see SOURCE.md): the messages and the inference.GRPCInferenceService client
// and server that padim serve speaks with --grpc-addr. Regenerate with
// generate.sh.
package oip
