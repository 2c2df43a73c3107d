//go:build linux

package pool

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// Access says who may use a pool, and so who may name its files.
//
// By default (the zero Access) a pool belongs to one user: the directory
// is 0700 and owned by that user (or root), files are 0600. With a Group,
// services running as different users share it through that group: the
// directory is 03770 (setgid, so that every file in it gets the group,
// and sticky, as /tmp is, so that a member can remove or rename only its
// own files: no member can take down or replace another's listener), its
// group is the Group and its owner a member of it; files are 0660.
// Nothing else may write the directory, and a directory that breaks these
// rules is refused with an error that says which (as ssh does for ~/.ssh).
type Access struct {
	Shared bool // the pool is shared by the members of Group
	Group  int  // the gid shared by the pool's users, when Shared
}

// OwnerOnly is the access of a pool used by one user: the zero Access.
var OwnerOnly = Access{}

// GroupAccess returns the access of a pool shared by the members of group,
// given by name or number.
func GroupAccess(group string) (Access, error) {
	if gid, err := strconv.Atoi(group); err == nil && gid >= 0 {
		return Access{Shared: true, Group: gid}, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return Access{}, fmt.Errorf("notnets: pool group %q: %w", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return Access{}, fmt.Errorf("notnets: pool group %q has gid %q", group, g.Gid)
	}
	return Access{Shared: true, Group: gid}, nil
}

func (a Access) shared() bool { return a.Shared }

// dirMode is the mode of a pool directory.
func (a Access) dirMode() uint32 {
	if a.shared() {
		return 0o3770
	}
	return 0o700
}

// fileMode is the mode of a segment file.
func (a Access) fileMode() uint32 {
	if a.shared() {
		return 0o660
	}
	return 0o600
}

// ErrAccess wraps every refusal of a pool directory or file on the grounds
// of its owner, group, mode or type, and of a pool whose marker fails
// rule F13 (ReadMode).
var ErrAccess = errors.New("notnets: pool refused")

// checkDir checks the result of lstat on a pool directory.
func (a Access) checkDir(dir string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("%w: %s is a symbolic link; a pool must be a real directory", ErrAccess, dir)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%w: %s is not a directory", ErrAccess, dir)
	}
	perm := st.Mode & 0o777
	if perm&0o002 != 0 {
		return fmt.Errorf("%w: %s is writable by others (mode %04o)", ErrAccess, dir, perm)
	}
	if !a.shared() {
		if perm&0o020 != 0 {
			return fmt.Errorf("%w: %s is writable by its group (mode %04o), and no pool group was given", ErrAccess, dir, perm)
		}
		if euid := uint32(os.Geteuid()); st.Uid != euid && st.Uid != 0 {
			return fmt.Errorf("%w: %s is owned by uid %d, not by this user (uid %d) or root", ErrAccess, dir, st.Uid, euid)
		}
		return nil
	}
	if int(st.Gid) != a.Group {
		return fmt.Errorf("%w: %s belongs to group %d, not the pool group %d", ErrAccess, dir, st.Gid, a.Group)
	}
	if st.Mode&unix.S_ISVTX == 0 {
		return fmt.Errorf("%w: %s is shared by group %d but not sticky (mode %04o): a member could remove another's listener; chmod +t it", ErrAccess, dir, a.Group, st.Mode&0o7777)
	}
	if euid := uint32(os.Geteuid()); st.Uid != euid && st.Uid != 0 && !memberOf(st.Uid, a.Group) {
		return fmt.Errorf("%w: %s is owned by uid %d, who is neither this user (uid %d), root, nor a member of the pool group %d", ErrAccess, dir, st.Uid, euid, a.Group)
	}
	return nil
}

// checkFile checks the result of fstat on a segment file opened in the
// pool: a regular file, writable by nobody outside the pool's users,
// owned by this user or root, or in a shared pool carrying its group.
func (a Access) checkFile(path string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: segment %s is not a regular file", ErrAccess, path)
	}
	if st.Mode&0o002 != 0 {
		return fmt.Errorf("%w: segment %s is writable by others (mode %04o)", ErrAccess, path, st.Mode&0o777)
	}
	euid := uint32(os.Geteuid())
	if st.Uid == euid || st.Uid == 0 {
		return nil
	}
	if a.shared() && int(st.Gid) == a.Group {
		return nil
	}
	return fmt.Errorf("%w: segment %s is owned by uid %d (group %d), not by this user (uid %d) or a user of the pool", ErrAccess, path, st.Uid, st.Gid, euid)
}

// memberOf reports whether the user uid is a member of the group gid
// (primary or supplementary), as the user database says.
func memberOf(uid uint32, gid int) bool {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return false
	}
	gids, err := u.GroupIds()
	if err != nil {
		return u.Gid == strconv.Itoa(gid)
	}
	return u.Gid == strconv.Itoa(gid) || slices.Contains(gids, strconv.Itoa(gid))
}

// ProtectSocket gives the Unix socket name in the directory dirFD the mode
// (and group) of a segment file of the pool, whatever the umask made of
// it. It changes nothing but a socket: a link or file put in its place
// since it was bound is refused, not followed.
func (a Access) ProtectSocket(dirFD int, name string) error {
	fd, err := unix.Openat(dirFD, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("notnets: open socket %s: %w", name, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("notnets: stat socket %s: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%w: %s was replaced by something other than a socket", ErrAccess, name)
	}
	if a.shared() {
		if err := unix.Fchownat(fd, "", -1, a.Group, unix.AT_EMPTY_PATH); err != nil {
			return fmt.Errorf("notnets: give socket %s to group %d: %w", name, a.Group, err)
		}
	}
	// chmod has no descriptor form for an O_PATH descriptor; its /proc
	// name reaches the same inode.
	if err := unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), a.fileMode()); err != nil {
		return fmt.Errorf("notnets: set the mode of socket %s: %w", name, err)
	}
	return nil
}

// Prepare creates dir for a listener if it does not exist (mode 0700, or
// 03770 with the group for a shared pool) and checks it as CheckDir does.
func Prepare(dir string, a Access) error {
	if dir == "" {
		return errors.New("notnets: empty pool directory")
	}
	err := unix.Mkdir(dir, a.dirMode())
	switch {
	case err == nil:
		// The umask may have taken bits away, and the group is ours to set.
		if a.shared() {
			if err := unix.Lchown(dir, -1, a.Group); err != nil {
				return fmt.Errorf("notnets: give pool directory %s to group %d: %w", dir, a.Group, err)
			}
		}
		if err := unix.Chmod(dir, a.dirMode()); err != nil {
			return fmt.Errorf("notnets: set the mode of pool directory %s: %w", dir, err)
		}
	case !errors.Is(err, unix.EEXIST):
		return fmt.Errorf("notnets: create pool directory %s: %w", dir, err)
	default:
		stickyOwn(dir, a)
	}
	return CheckDir(dir, a)
}

// stickyOwn adds the sticky bit to an existing shared pool directory that
// this user owns and that lacks it (a pool made before the bit was
// required). Anything else is left for CheckDir to judge.
func stickyOwn(dir string, a Access) {
	var st unix.Stat_t
	if !a.shared() || unix.Lstat(dir, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return
	}
	if st.Mode&unix.S_ISVTX == 0 && st.Uid == uint32(os.Geteuid()) {
		unix.Chmod(dir, st.Mode&0o7777|unix.S_ISVTX)
	}
}

// OpenDir opens the pool directory dir, checked as CheckDir does, and
// returns a descriptor of it, for naming files relative to the very
// directory that was checked (as "/proc/self/fd/<fd>/<name>" where an API
// takes only paths, such as bind(2)). The caller closes it.
func OpenDir(dir string, a Access) (int, error) { return openDir(dir, a) }

// openDir opens dir without following a symbolic link (O_PATH: no read
// permission needed) and checks it as CheckDir does. Files are then
// opened and created relative to the descriptor, in the very directory
// that was checked, whatever happens to the path meanwhile.
func openDir(dir string, a Access) (int, error) {
	fd, _, err := openDirStat(dir, a)
	return fd, err
}

// openDirStat is openDir, and also returns what fstat said of the
// directory (its owner: the marker's, F13).
func openDirStat(dir string, a Access) (int, unix.Stat_t, error) {
	var st unix.Stat_t
	dir = filepath.Clean(dir) // "link/" would follow the link
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			if cerr := CheckDir(dir, a); cerr != nil {
				return -1, st, cerr // says which: a link, or not a directory
			}
		}
		return -1, st, fmt.Errorf("notnets: pool directory %s: %w", dir, err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, st, fmt.Errorf("notnets: pool directory %s: %w", dir, err)
	}
	if err := a.checkDir(dir, &st); err != nil {
		unix.Close(fd)
		return -1, st, err
	}
	return fd, st, nil
}

// CheckDir checks that dir can be trusted as a pool: a real directory (not
// a symbolic link) that only the pool's users can write, owned as Access
// says. A client calls it before it names anything in the pool.
func CheckDir(dir string, a Access) error {
	dir = filepath.Clean(dir) // lstat("link/") follows the link
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("notnets: pool directory %s: %w", dir, err)
	}
	return a.checkDir(dir, &st)
}
