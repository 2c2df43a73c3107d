//go:build race

package notnets_test

const raceEnabled = true
