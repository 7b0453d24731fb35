//go:build darwin || freebsd

package safetensors

const mapPopulate = 0
