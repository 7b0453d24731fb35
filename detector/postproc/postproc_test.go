package postproc

import (
	"reflect"
	"testing"
)

func maskFrom(rows ...string) *Mask {
	m := &Mask{W: len(rows[0]), H: len(rows)}
	for _, r := range rows {
		for _, c := range r {
			m.Pix = append(m.Pix, c == '#')
		}
	}
	return m
}

func (m *Mask) String() string {
	s := ""
	for y := 0; y < m.H; y++ {
		for x := 0; x < m.W; x++ {
			if m.Pix[y*m.W+x] {
				s += "#"
			} else {
				s += "."
			}
		}
		s += "\n"
	}
	return s
}

func TestOpenRemovesSpecksKeepsBlobs(t *testing.T) {
	in := maskFrom(
		"#.........",
		"..........",
		"...###....",
		"...###..#.",
		"...###....",
		"..........",
	)
	// a radius-1 disk is a plus: the square's corners go, the specks vanish
	want := maskFrom(
		"..........",
		"..........",
		"....#.....",
		"...###....",
		"....#.....",
		"..........",
	)
	got := Open(in, 1)
	if got.String() != want.String() {
		t.Fatalf("got\n%swant\n%s", got, want)
	}
	// a blob touching the border survives
	edge := maskFrom("##....", "##....", "##....")
	if g := Open(edge, 1); g.String() != edge.String() {
		t.Fatalf("border blob eroded:\n%s", g)
	}
}

func TestBoxes8Connected(t *testing.T) {
	m := maskFrom(
		"##....",
		"..#...",
		"......",
		"....##",
	)
	score := make([]float32, 24)
	score[2*6-4] = 7 // (2,1)
	score[3*6+5] = 3
	got := Boxes(m, score)
	want := []Box{{X: 0, Y: 0, W: 3, H: 2, Area: 3, MaxScore: 7}, {X: 4, Y: 3, W: 2, H: 1, Area: 2, MaxScore: 3}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v want %+v", got, want)
	}
	if b := Boxes(maskFrom("...."), make([]float32, 4)); b != nil {
		t.Fatal("boxes on empty mask")
	}
}

func TestThresholdStrict(t *testing.T) {
	m := Threshold([]float32{1, 2, 3}, 3, 1, 2)
	if !reflect.DeepEqual(m.Pix, []bool{false, false, true}) {
		t.Fatal(m.Pix)
	}
}
