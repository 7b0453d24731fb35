package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/padim/padim/detector"
	"github.com/padim/padim/detector/gauss"
	"github.com/padim/padim/detector/imageio"
)

func infoCommand() *cli.Command {
	return &cli.Command{
		Name:      "info",
		Usage:     "show a model's metadata, channels and thresholds",
		UsageText: "padim info --model M.padim [--json]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Required: true},
			&cli.BoolFlag{Name: "json"},
		},
		Action: func(c *cli.Context) error {
			m, err := detector.Load(c.String("model"))
			if err != nil {
				return err
			}
			st, _ := os.Stat(c.String("model"))
			info := map[string]any{
				"file": c.String("model"), "bytes": st.Size(), "format_version": detector.FormatVersion,
				"created": m.Created, "backbone": m.BackboneName, "backbone_sha256": m.BackboneSHA256,
				"backbone_embedded": len(m.BackboneONNX) > 0, "taps": m.Taps, "grid": []int{m.GridH, m.GridW},
				"preprocess": m.Preprocess, "eps": m.Eps, "n_train": m.NTrain, "seed": m.Seed, "sigma": m.Sigma,
				"dim": len(m.Channels), "total_channels": m.TotalChannels, "channels": m.Channels,
				"gaussian": m.Gaussian.Form(), "decode": m.Preprocess.Decode,
			}
			if lr, ok := m.Gaussian.(*gauss.LowRank); ok {
				info["rank"] = lr.N
			}
			if cal := m.Calibration; cal != nil {
				info["calibration"] = cal
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			fmt.Printf("file             %s (%d bytes, format %d)\n", c.String("model"), st.Size(), detector.FormatVersion)
			fmt.Printf("created          %s\n", m.Created.Format("2006-01-02 15:04:05 MST"))
			fmt.Printf("backbone         %s (sha256 %s, embedded %v)\n", m.BackboneName, m.BackboneSHA256, len(m.BackboneONNX) > 0)
			fmt.Printf("taps             %v → grid %dx%d\n", m.Taps, m.GridH, m.GridW)
			fmt.Printf("input            resize %d, crop %d, tile %d overlap %d, mean %v std %v\n", m.Preprocess.Resize, m.Preprocess.Crop, m.Preprocess.Tile, m.Preprocess.Overlap, m.Preprocess.Mean, m.Preprocess.Std)
			fmt.Printf("decode           %s%s\n", m.Preprocess.Decode, decodeNote(m.Preprocess.Decode))
			fmt.Printf("fit              %d samples, eps %g, blur sigma %g\n", m.NTrain, m.Eps, m.Sigma)
			switch g := m.Gaussian.(type) {
			case *gauss.LowRank:
				fmt.Printf("gaussian         low-rank, rank %d (μ and M = L⁻¹A per patch: %d×%d numbers)\n", g.N, g.N, g.D)
			case *gauss.Gaussian:
				fmt.Printf("gaussian         full (μ and packed L⁻¹ per patch: %d numbers)\n", gauss.PackedLen(g.D))
			}
			fmt.Printf("channels         %d of %d (seed %d): %v\n", len(m.Channels), m.TotalChannels, m.Seed, m.Channels)
			if cal := m.Calibration; cal != nil {
				fmt.Printf("thresholds       image %.6g, pixel %.6g (%s)\n", cal.Image, cal.Pixel, cal.Rule)
				fmt.Printf("false alarms     %s\n", strings.TrimPrefix(falseAlarms(cal), "false alarms "))
				if w := cal.Warning(); w != "" {
					fmt.Printf("                 %s\n", w)
				}
				fmt.Printf("calibration      %d images, out-of-sample scores %v\n", cal.Images, cal.ImageScores)
				fmt.Printf("held-out pixels  quantiles %v at %v\n", cal.PixelQuantiles, cal.PixelLevels)
			} else {
				fmt.Println("thresholds       none (trained with --calibrate none, or on one image)")
			}
			return nil
		},
	}
}

// decodeNote says what a decode path means on this build.
func decodeNote(d imageio.Decoder) string {
	if err := d.Available(); err != nil {
		return " (this build lacks libjpeg-turbo: scoring uses go, with a warning; install libturbojpeg0-dev and rebuild)"
	}
	switch d {
	case imageio.DecodeTurboFull:
		return " (JPEG by libjpeg-turbo at full size, then the exact resize)"
	case imageio.DecodeTurboDCT:
		return " (JPEG by libjpeg-turbo shrunk in the DCT domain, then the exact resize)"
	}
	return " (Go's decoders, exact resize)"
}
