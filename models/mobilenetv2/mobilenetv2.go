// Package mobilenetv2 carries padim's pretrained backbone: an ImageNet
// MobileNetV2 1.0/224 cut after block 12 (taps layer1 24×56², layer2 32×28²,
// layer3 96×14²; input RGB scaled to [-1,1]), embedded in the binary so that a
// fresh install has real weights without a download. It is a derivative of
// google-coral/test_data's mobilenet_v2_1.0_224_quant.tflite under the Apache
// License 2.0 (License); README.md beside this file says what was changed.
package mobilenetv2

import (
	"crypto/sha256"
	_ "embed" // the ONNX graph and its licence
	"encoding/hex"
	"fmt"
)

// Arch is the name `padim backbone --arch` knows the model by.
const Arch = "mobilenet_v2"

// FileName is the model's file name, used where a backbone needs a name.
const FileName = "mobilenet_v2_imagenet.onnx"

// SHA256 is the hex sha256 of the ONNX bytes.
const SHA256 = "def73aad26b438944f8c4d17cc2d07821b1cb1e9c68f47bf31cbc4834806a5e9"

// Source says in one line where the weights come from and under which licence.
const Source = "ImageNet MobileNetV2 1.0/224 (google-coral/test_data, Apache-2.0), dequantized to float32, cut after block 12"

// Taps are the model's outputs, shallowest first, and Channels their depths.
var (
	Taps     = []string{"layer1", "layer2", "layer3"}
	Channels = []int{24, 32, 96}
)

// InputSize is the side of the square input.
const InputSize = 224

//go:embed mobilenet_v2_imagenet.onnx
var model []byte

//go:embed LICENSE.mobilenet_v2
var license string

// ONNX returns a copy of the ONNX model (2.2 MB), safe to keep or modify.
func ONNX() []byte { return append([]byte(nil), model...) }

// License returns the Apache License 2.0 text the model is distributed under.
func License() string { return license }

// Verify checks the embedded bytes against SHA256 (a corrupted build or a
// replaced file); it returns nil when they match.
func Verify() error {
	sum := sha256.Sum256(model)
	if got := hex.EncodeToString(sum[:]); got != SHA256 {
		return fmt.Errorf("mobilenetv2: the embedded model has sha256 %s, want %s", got, SHA256)
	}
	return nil
}
