// Package onnxpb writes ONNX models: the few protobuf messages a feed-forward
// graph needs (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto,
// ValueInfoProto), encoded directly with protowire, so padim can emit backbones
// with no Python and no generated code. Field numbers follow onnx/onnx.proto.
package onnxpb

import (
	"encoding/binary"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Element types (TensorProto.DataType).
const (
	Float = 1
	Int64 = 7
)

// IRVersion 8 pairs with opsets up to 18; ONNX Runtime 1.24 reads it.
const IRVersion = 8

// Attr is a node attribute.
type Attr struct {
	Name   string
	Int    *int64
	Float  *float32
	Ints   []int64
	String string
}

// I makes an integer attribute.
func I(name string, v int64) Attr { return Attr{Name: name, Int: &v} }

// Is makes an integer-list attribute.
func Is(name string, v ...int64) Attr { return Attr{Name: name, Ints: v} }

// F makes a float attribute.
func F(name string, v float32) Attr { return Attr{Name: name, Float: &v} }

// Node is one operator.
type Node struct {
	Op      string
	Name    string
	Inputs  []string
	Outputs []string
	Attrs   []Attr
}

// Tensor is an initializer: float32 or int64 data with dims.
type Tensor struct {
	Name   string
	Dims   []int64
	Floats []float32
	Int64s []int64
}

// Value is a graph input or output: float32 with dims; a negative dim is
// symbolic and named by Param.
type Value struct {
	Name  string
	Dims  []int64
	Param []string // names for negative dims, in order
}

// Graph is a whole model.
type Graph struct {
	Name         string
	Nodes        []Node
	Initializers []Tensor
	Inputs       []Value
	Outputs      []Value
	Opset        int64
	Producer     string
	Metadata     [][2]string // metadata_props, in order
}

// Marshal encodes the model.
func (g *Graph) Marshal() []byte {
	var m []byte
	m = protowire.AppendTag(m, 1, protowire.VarintType)
	m = protowire.AppendVarint(m, IRVersion)
	m = appendString(m, 2, g.Producer)
	m = appendBytes(m, 7, g.marshalGraph())
	var op []byte
	op = appendString(op, 1, "")
	op = protowire.AppendTag(op, 2, protowire.VarintType)
	op = protowire.AppendVarint(op, uint64(g.Opset))
	m = appendBytes(m, 8, op)
	for _, kv := range g.Metadata {
		var e []byte
		e = appendString(e, 1, kv[0])
		e = appendString(e, 2, kv[1])
		m = appendBytes(m, 14, e)
	}
	return m
}

func (g *Graph) marshalGraph() []byte {
	var b []byte
	for _, n := range g.Nodes {
		b = appendBytes(b, 1, marshalNode(n))
	}
	b = appendString(b, 2, g.Name)
	for _, t := range g.Initializers {
		b = appendBytes(b, 5, marshalTensor(t))
	}
	for _, v := range g.Inputs {
		b = appendBytes(b, 11, marshalValue(v))
	}
	for _, v := range g.Outputs {
		b = appendBytes(b, 12, marshalValue(v))
	}
	return b
}

func marshalNode(n Node) []byte {
	var b []byte
	for _, in := range n.Inputs {
		b = appendString(b, 1, in)
	}
	for _, out := range n.Outputs {
		b = appendString(b, 2, out)
	}
	b = appendString(b, 3, n.Name)
	b = appendString(b, 4, n.Op)
	for _, a := range n.Attrs {
		b = appendBytes(b, 5, marshalAttr(a))
	}
	return b
}

func marshalAttr(a Attr) []byte {
	var b []byte
	b = appendString(b, 1, a.Name)
	var typ uint64
	switch {
	case a.Float != nil:
		b = protowire.AppendTag(b, 2, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, math.Float32bits(*a.Float))
		typ = 1
	case a.Int != nil:
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(*a.Int))
		typ = 2
	case a.Ints != nil:
		var p []byte
		for _, v := range a.Ints {
			p = protowire.AppendVarint(p, uint64(v))
		}
		b = appendBytes(b, 8, p)
		typ = 7
	default:
		b = appendBytes(b, 4, []byte(a.String))
		typ = 3
	}
	b = protowire.AppendTag(b, 20, protowire.VarintType)
	return protowire.AppendVarint(b, typ)
}

func marshalTensor(t Tensor) []byte {
	var b []byte
	var dims []byte
	for _, d := range t.Dims {
		dims = protowire.AppendVarint(dims, uint64(d))
	}
	b = appendBytes(b, 1, dims)
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	var raw []byte
	if t.Int64s != nil {
		b = protowire.AppendVarint(b, Int64)
		raw = make([]byte, 8*len(t.Int64s))
		for i, v := range t.Int64s {
			binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
		}
	} else {
		b = protowire.AppendVarint(b, Float)
		raw = make([]byte, 4*len(t.Floats))
		for i, v := range t.Floats {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
	}
	b = appendString(b, 8, t.Name)
	return appendBytes(b, 9, raw)
}

func marshalValue(v Value) []byte {
	var shape []byte
	pi := 0
	for _, d := range v.Dims {
		var dim []byte
		if d < 0 {
			name := "N"
			if pi < len(v.Param) {
				name = v.Param[pi]
			}
			pi++
			dim = appendString(dim, 2, name)
		} else {
			dim = protowire.AppendTag(dim, 1, protowire.VarintType)
			dim = protowire.AppendVarint(dim, uint64(d))
		}
		shape = appendBytes(shape, 1, dim)
	}
	var tt []byte
	tt = protowire.AppendTag(tt, 1, protowire.VarintType)
	tt = protowire.AppendVarint(tt, Float)
	tt = appendBytes(tt, 2, shape)
	var typ []byte
	typ = appendBytes(typ, 1, tt)
	var b []byte
	b = appendString(b, 1, v.Name)
	return appendBytes(b, 2, typ)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return appendBytes(b, num, []byte(s))
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}
