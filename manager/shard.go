package manager

import (
	"hash/fnv"
	"net/netip"
)

// shardOf returns the shard that owns vip among shards (sorted, at least
// one): a stable hash of the address's 16-byte form (FNV-1a 64) modulo the
// number of shards. The same on every replica and across restarts; it
// changes when the number of shards changes, which is why the shard set is
// fixed for the life of a deployment.
func shardOf(vip netip.Addr, shards []uint64) uint64 {
	h := fnv.New64a()
	b := vip.Unmap().As16()
	h.Write(b[:])
	return shards[h.Sum64()%uint64(len(shards))]
}
