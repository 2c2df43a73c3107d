package main

import (
	"cmp"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// printReport prints one table per concurrency and size, a row per
// transport, instance count and load (gap or rate): load by load, and
// within a load count by count.
func printReport(w io.Writer, rep *Report) {
	loadCol, open := "gap", false
	instCol, waitCol, modeCol, linesCol := false, false, false, false
	for _, r := range rep.Results {
		if r.RatePerSec > 0 {
			loadCol, open = "rate", true
		}
		instCol = instCol || r.Instances > 1
		waitCol = waitCol || r.HandlerWaitUS > 0
		modeCol = modeCol || r.showMode
		linesCol = linesCol || r.Lines != nil
	}
	fmt.Fprint(w, "notnets bench: helloworld echo (Greeter.SayHello), ")
	if len(rep.ServerPIDs) == 1 {
		fmt.Fprintf(w, "server in another process (pid %d)\n", rep.ServerPIDs[0])
	} else {
		pids := make([]string, len(rep.ServerPIDs))
		for i, pid := range rep.ServerPIDs {
			pids[i] = strconv.Itoa(pid)
		}
		fmt.Fprintf(w, "servers in %d other processes (pids %s), the first N the instances at N\n", len(pids), strings.Join(pids, ", "))
	}
	fmt.Fprintf(w, "machine: %s, %s; calls interleaved in %d rounds\n", rep.Machine, rep.Go, rep.Rounds)
	if instCol {
		fmt.Fprintf(w, "balancing: notnets least_request (its default), grpc-go %s over the instances' addresses\n", rep.GRPCBalancing)
	}
	if modeCol {
		fmt.Fprintf(w, "pool modes: %s, each in a pool of its own", strings.Join(rep.PoolModes, ", "))
		if rep.FlushInsns != "" {
			fmt.Fprintf(w, "; coherence-sw: %s", rep.FlushInsns)
		}
		fmt.Fprintln(w)
	}
	if rep.HandlerWait != "" {
		fmt.Fprintf(w, "handlers wait %s in nanosleep (measured mean in the wait column)", rep.HandlerWait)
		if rep.HandlerSlots > 0 {
			fmt.Fprintf(w, ", at most %d at once per instance", rep.HandlerSlots)
		}
		fmt.Fprintln(w)
	}
	var group []*Result
	flush := func() {
		if len(group) == 0 {
			return
		}
		r0, rl := group[0], group[len(group)-1]
		per := "transport"
		if rl.load != r0.load {
			per += " and " + loadCol
		}
		if rl.Instances != r0.Instances {
			per += " and instance count"
		}
		fmt.Fprintf(w, "\npayload %s, %d caller(s) on one connection, %d calls per %s\n", sizeName(r0.Size), r0.Concurrency, r0.Calls, per)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprint(tw, "transport\t")
		if modeCol {
			fmt.Fprint(tw, "pool\t")
		}
		fmt.Fprintf(tw, "%s\t", loadCol)
		if instCol {
			fmt.Fprint(tw, "inst\t")
		}
		fmt.Fprint(tw, "avg\tp50\tp99\tp99.9\tmax\tcalls/s\tMB/s\tcpu/call\t")
		if waitCol {
			fmt.Fprint(tw, "wait\t")
		}
		if linesCol {
			fmt.Fprint(tw, "client fl/inv\tserver fl/inv\t")
		}
		fmt.Fprint(tw, "\tavg vs tcp\tp99.9 vs tcp\tcalls/s vs tcp\tcpu vs tcp\t")
		if instCol {
			fmt.Fprint(tw, "by instance %\t")
		}
		fmt.Fprintln(tw)
		for _, r := range group {
			fmt.Fprintf(tw, "%s\t", r.Transport)
			if modeCol {
				fmt.Fprintf(tw, "%s\t", cmp.Or(r.PoolMode, "-"))
			}
			fmt.Fprintf(tw, "%s\t", r.load)
			if instCol {
				fmt.Fprintf(tw, "%d\t", r.Instances)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.0f\t%.1f\t%s\t",
				us(r.AvgUS), us(r.P50US), us(r.P99US), us(r.P999US), us(r.MaxUS),
				r.CallsPerSec, r.MBPerSec, us(r.ClientCPUUS+r.ServerCPUUS))
			if waitCol {
				fmt.Fprintf(tw, "%s\t", orDash(r.HandlerWaitUS, us))
			}
			if linesCol {
				if l := r.Lines; l != nil {
					fmt.Fprintf(tw, "%s/%s%s\t%s/%s%s\t", count(l.ClientFlushed), count(l.ClientInvalidated), changed(l.ClientChanged),
						count(l.ServerFlushed), count(l.ServerInvalidated), changed(l.ServerChanged))
				} else {
					fmt.Fprint(tw, "-\t-\t")
				}
			}
			fmt.Fprintf(tw, "\t%s\t%s\t%s\t%s\t", ratio(r.AvgRatio), ratio(r.P999Ratio), ratio(r.TputRatio), ratio(r.CPURatio))
			if instCol {
				fmt.Fprintf(tw, "%s\t", shares(r.InstanceCalls))
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		group = nil
	}
	for _, r := range rep.Results {
		if len(group) > 0 && (group[0].Size != r.Size || group[0].Concurrency != r.Concurrency) {
			flush()
		}
		group = append(group, r)
	}
	flush()
	fmt.Fprintln(w, "\nratios: grpc-tcp's latency or CPU over the transport's, or the transport's calls/s over grpc-tcp's (above 1x: better than grpc-tcp)")
	if instCol {
		fmt.Fprintln(w, "inst: server instances serving the calls, ratios against grpc-tcp at the same count; by instance: each one's share of the calls, in percent; cpu/call counts every server process")
	}
	if linesCol {
		fmt.Fprintln(w, "fl/inv: cache lines (64 B) flushed (written back) and invalidated per call on the calls' connections, by the client process and the server process; polls included (in coherence-sim, (N new): the invalidated lines the other side had changed)")
	}
	for _, idle := range rep.Idle {
		fmt.Fprintf(w, "idle, %s and %d caller(s), every connection open, no call: %.1f%% of a core (client and servers)", sizeName(idle.Size), idle.Concurrency, idle.CPUPercent)
		for _, l := range idle.Lines {
			fmt.Fprintf(w, "; %s lines/s fl/inv client %s/%s, server %s/%s", l.Mode, count(l.ClientFlushed), count(l.ClientInvalidated), count(l.ServerFlushed), count(l.ServerInvalidated))
		}
		fmt.Fprintln(w)
	}
	if waitCol {
		fmt.Fprintln(w, "wait: the handlers' measured mean wait (-handler-wait plus the kernel's wake-up), outside any wait for a slot")
	}
	if open {
		fmt.Fprintln(w, "rate: open loop, calls scheduled at that rate; latency counted from each call's scheduled time")
	} else if len(rep.Results) > 0 {
		fmt.Fprintln(w, "gap: the caller busy-waits that long before each call; cpu/call excludes the busy-wait")
	}
	for _, r := range rep.Results {
		if r.Transport == "wake" {
			fmt.Fprintln(w, "wake: one-way futex wake-up latency measured by the woken server thread, not a call; its cpu/call is meaningless (the client spins for the answer)")
			break
		}
	}
}

// shares writes how calls were shared among instances, in percent:
// "34/33/33"; "-" for none.
func shares(calls []int64) string {
	var total int64
	for _, n := range calls {
		total += n
	}
	if total == 0 {
		return "-"
	}
	parts := make([]string, len(calls))
	for i, n := range calls {
		parts[i] = strconv.FormatInt((100*n+total/2)/total, 10)
	}
	return strings.Join(parts, "/")
}

// count writes a count per call: 3 significant digits at most, k above
// 10,000.
func count(v float64) string {
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.1fk", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// changed writes " (N new)" for the changed lines of coherence-sim, or
// nothing.
func changed(v float64) string {
	if v == 0 {
		return ""
	}
	return " (" + count(v) + " new)"
}

// orDash formats v, or writes "-" for 0.
func orDash(v float64, format func(float64) string) string {
	if v == 0 {
		return "-"
	}
	return format(v)
}

func us(v float64) string {
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.1fms", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0fus", v)
	default:
		return fmt.Sprintf("%.2fus", v)
	}
}

func ratio(v float64) string {
	if v == 0 {
		return "-"
	}
	if v >= 10 {
		return fmt.Sprintf("%.0fx", v)
	}
	return fmt.Sprintf("%.1fx", v)
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
