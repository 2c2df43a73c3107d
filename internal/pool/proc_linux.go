package pool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// ProcessStart returns when process pid started (clock ticks since boot,
// from /proc) and whether it is alive; the start time tells a process from a
// later one that reuses its pid. A zombie (exited, not yet reaped) counts as
// gone. Without /proc it falls back to kill(pid, 0) and a start time of 0.
func ProcessStart(pid int) (uint64, bool) {
	if pid <= 0 {
		return 0, false
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		if _, statErr := os.Stat("/proc/self/stat"); statErr == nil {
			return 0, false // /proc works, and has no such process
		}
		err := syscall.Kill(pid, 0)
		return 0, err == nil || errors.Is(err, syscall.EPERM)
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 20 || fields[0] == "Z" || fields[0] == "X" {
		return 0, false
	}
	start, err := strconv.ParseUint(fields[19], 10, 64) // field 22 of the line
	return start, err == nil
}

// ProcessAlive reports whether process pid exists and has not exited.
func ProcessAlive(pid int) bool {
	_, ok := ProcessStart(pid)
	return ok
}
