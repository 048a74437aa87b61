package resource

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Raw SysV IPC system calls (x86-64 layouts: the kernel always uses the
// 64-bit "IPC_64" structures there). x/sys/unix covers shared memory only.

const (
	ipcInfoShm   = 14 // SHM_INFO
	ipcStatShm   = 15 // SHM_STAT_ANY
	ipcInfoMsg   = 12 // MSG_INFO
	ipcStatMsg   = 13 // MSG_STAT_ANY
	ipcInfoSem   = 19 // SEM_INFO
	ipcStatSem   = 20 // SEM_STAT_ANY
	semGetAll    = 13 // GETALL
	semSetAll    = 17 // SETALL
	shmLock      = 11 // SHM_LOCK
	shmDest      = 0o1000
	shmLocked    = 0o2000
	shmExec      = 0o100000
	msgCopy      = 0o40000
	msgNoError   = 0o10000
	semUndo      = 0x1000
	ipcModeBits  = 0o777
	semMaxValue  = 32767 // SEMVMX
	semMaxOps    = 500   // SEMOPM, the default limit of ops per semop
	shmInfoBytes = 128   // room for struct shm_info, msginfo, seminfo
)

// msqidDS is struct msqid64_ds.
type msqidDS struct {
	Perm                 unix.SysvIpcPerm
	Stime, Rtime, Ctime  int64
	Cbytes, Qnum, Qbytes uint64
	Lspid, Lrpid         int32
	_                    uint64
	_                    uint64
}

// semidDS is struct semid64_ds.
type semidDS struct {
	Perm  unix.SysvIpcPerm
	Otime int64
	_     uint64
	Ctime int64
	_     uint64
	Nsems uint64
	_     uint64
	_     uint64
}

// semBuf is struct sembuf.
type semBuf struct {
	Num uint16
	Op  int16
	Flg int16
}

func ipcCall(nr uintptr, a, b, c, d, e uintptr) (int, error) {
	r, _, errno := unix.Syscall6(nr, a, b, c, d, e, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}

func shmctl(id, cmd int, ds *unix.SysvShmDesc) (int, error) {
	return ipcCall(unix.SYS_SHMCTL, uintptr(id), uintptr(cmd), uintptr(unsafe.Pointer(ds)), 0, 0)
}

// ipcMaxIndex returns the highest index in use for shm, msg or sem (SHM_INFO,
// MSG_INFO, SEM_INFO), or -1 if none.
func ipcMaxIndex(nr uintptr, cmd int) (int, error) {
	var buf [shmInfoBytes]byte
	if nr == unix.SYS_SEMCTL {
		return ipcCall(nr, 0, 0, uintptr(cmd), uintptr(unsafe.Pointer(&buf[0])), 0)
	}
	return ipcCall(nr, 0, uintptr(cmd), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
}

// shmSwapped reads shm_swp (pages of shared memory in swap) from SHM_INFO.
func shmSwapped() (uint64, error) {
	var buf [shmInfoBytes]uint64 // struct shm_info: int used_ids; ulong shm_tot, shm_rss, shm_swp, ...
	_, err := ipcCall(unix.SYS_SHMCTL, 0, ipcInfoShm, uintptr(unsafe.Pointer(&buf[0])), 0, 0)
	return buf[3], err
}

func msgctl(id, cmd int, ds *msqidDS) (int, error) {
	return ipcCall(unix.SYS_MSGCTL, uintptr(id), uintptr(cmd), uintptr(unsafe.Pointer(ds)), 0, 0)
}

func semctlDS(id, cmd int, ds *semidDS) (int, error) {
	return ipcCall(unix.SYS_SEMCTL, uintptr(id), 0, uintptr(cmd), uintptr(unsafe.Pointer(ds)), 0)
}

func semctlAll(id, cmd int, vals []uint16) error {
	if len(vals) == 0 {
		return nil
	}
	_, err := ipcCall(unix.SYS_SEMCTL, uintptr(id), 0, uintptr(cmd), uintptr(unsafe.Pointer(&vals[0])), 0)
	return err
}

func msgget(key int32, flags int) (int, error) {
	return ipcCall(unix.SYS_MSGGET, uintptr(uint32(key)), uintptr(flags), 0, 0, 0)
}

func semget(key int32, n, flags int) (int, error) {
	return ipcCall(unix.SYS_SEMGET, uintptr(uint32(key)), uintptr(n), uintptr(flags), 0, 0)
}

func shmget(key int32, size uint64, flags int) (int, error) {
	return ipcCall(unix.SYS_SHMGET, uintptr(uint32(key)), uintptr(size), uintptr(flags), 0, 0)
}

// msgsnd sends buf, which starts with the 8-byte type.
func msgsnd(id int, buf []byte, flags int) error {
	_, err := ipcCall(unix.SYS_MSGSND, uintptr(id), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)-8), uintptr(flags), 0)
	return err
}

// msgrcv receives into buf (type, then text) and returns the text length.
func msgrcv(id int, buf []byte, typ int64, flags int) (int, error) {
	return ipcCall(unix.SYS_MSGRCV, uintptr(id), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)-8), uintptr(typ), uintptr(flags))
}

// shmAttach attaches segment id in ckpt's own address space and returns
// the mapping.
func shmAttach(id int, size uint64, flags int) ([]byte, error) {
	r, _, errno := unix.Syscall(unix.SYS_SHMAT, uintptr(id), 0, uintptr(flags))
	if errno != 0 {
		return nil, errno
	}
	n := (size + pageSize - 1) &^ (pageSize - 1)
	return unsafe.Slice((*byte)(unsafe.Add(nil, r)), n), nil
}

func shmDetach(b []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_SHMDT, uintptr(unsafe.Pointer(&b[0])), 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// semBufBytes views sembufs as bytes, to copy them into a target.
func semBufBytes(ops []semBuf) []byte {
	if len(ops) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&ops[0])), len(ops)*int(unsafe.Sizeof(ops[0])))
}

// mincore reports which pages of b are resident (bit 0 of each byte of vec).
func mincore(b, vec []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return errno
	}
	return nil
}
