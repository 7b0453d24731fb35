// Package deploy holds padim's container image (Dockerfile) and Kubernetes
// manifests (k8s/): sharded scoring as an Indexed Job, a training fan-out
// with its merge and calibration, and padim serve as a Deployment. Its test
// decodes every manifest strictly into the Kubernetes API types and checks
// how they fit together; README.md walks through them.
package deploy
