package hashring_test

import (
	"fmt"
	"net/netip"

	"github.com/ananta-go/ananta/hashring"
)

// Build a table of three weighted backends keyed by DIP:port and look up
// a flow.
func ExampleNew() {
	var members []hashring.Member
	for i, w := range []uint32{1, 1, 2} {
		dip := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 8080)
		key, _ := dip.MarshalBinary()
		members = append(members, hashring.Member{Key: key, Weight: w})
	}
	t, err := hashring.New(members, hashring.Config{})
	if err != nil {
		panic(err)
	}
	fmt.Println(t.Size(), t.Counts())
	fmt.Println(t.Lookup(0x9e3779b97f4a7c15)) // a flow hash, e.g. of the 5-tuple
	// Output:
	// 65537 [16385 16384 32768]
	// 0
}
