package main

import (
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/notnets/notnets/internal/pool"
)

// poolCmd lists or cleans a pool directory.
func poolCmd(args []string) error {
	fs := flag.NewFlagSet("pool", flag.ContinueOnError)
	dir := fs.String("dir", pool.DefaultDir(), "pool directory ($NOTNETS_POOL, else /dev/shm/notnets-<uid>)")
	group := fs.String("group", "", "the pool's group (name or number), as given to WithPoolGroup; empty for a pool of one user")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: notnets pool [-dir DIR] [-group GROUP] ls|clean

  ls      list the pool's files: listeners and their sockets, connection
          segments being announced, and which of them are stale (left by
          processes that died)
  clean   remove the stale files

The pool directory is checked as Listen and Dial check it, and refused if
it is a symbolic link, writable by others (or by its group, unless -group
names it), or owned by someone other than this user or root: run the
command as the pool's user. Files are removed relative to the directory
that was checked, never through a link.

flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	access := pool.OwnerOnly
	if *group != "" {
		a, err := pool.GroupAccess(*group)
		if err != nil {
			return err
		}
		access = a
	}
	switch fs.Arg(0) {
	case "ls", "":
		entries, err := pool.ScanIn(*dir, access)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "NAME\tKIND\tSIZE\tAGE\tSTALE\tWHY\n")
		for _, e := range entries {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%v\t%v\t%s\n", e.Name, e.Kind, e.Size, time.Since(e.Modified).Round(time.Second), e.Stale, e.Why)
		}
		return tw.Flush()
	case "clean":
		removed, err := pool.CleanIn(*dir, access)
		if err != nil {
			return err
		}
		for _, e := range removed {
			fmt.Printf("removed %s (%s)\n", e.Name, e.Why)
		}
		fmt.Printf("%d stale files removed from %s\n", len(removed), *dir)
		return nil
	}
	fs.Usage()
	return fmt.Errorf("unknown pool command %q", fs.Arg(0))
}
