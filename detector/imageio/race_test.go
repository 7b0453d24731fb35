//go:build race

package imageio

// raceEnabled: the race detector adds allocations of its own.
const raceEnabled = true
