package fastpath_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/fastpath"
)

// A Mux signs a redirect; a Host Agent holding the same key verifies it once
// and refuses the replay.
func Example() {
	var key [fastpath.KeySize]byte
	copy(key[:], "a key the Manager distributed...")
	muxKeys, _ := fastpath.NewKeyring(1, key)
	agentKeys, _ := fastpath.NewKeyring(1, key)
	agent, _ := fastpath.NewVerifier(fastpath.VerifierConfig{Keyring: agentKeys})

	now := time.Unix(1_800_000_000, 0)
	r := fastpath.Redirect{
		Proto: ananta.ProtocolTCP,
		Src: fastpath.End{DIP: netip.MustParseAddr("10.0.0.1"), DIPPort: 40000,
			VIP: netip.MustParseAddr("198.19.0.10"), VIPPort: 1024, Host: netip.MustParseAddr("192.168.1.1")},
		Dst: fastpath.End{DIP: netip.MustParseAddr("10.0.0.2"), DIPPort: 8080,
			VIP: netip.MustParseAddr("198.19.0.20"), VIPPort: 80, Host: netip.MustParseAddr("192.168.1.2")},
		Timestamp: now,
		Expiry:    now.Add(5 * time.Second),
		Nonce:     fastpath.NewNonce(),
	}
	msg, err := muxKeys.AppendSigned(nil, &r)
	if err != nil {
		panic(err)
	}
	got, err := agent.Verify(msg, now.Add(100*time.Millisecond))
	fmt.Println(len(msg), err)
	fmt.Println(got.SourceTuple())
	fmt.Println(got.DestTuple())
	_, err = agent.Verify(msg, now.Add(200*time.Millisecond))
	fmt.Println(err)
	// Output:
	// 104 <nil>
	// tcp 198.19.0.10:1024 -> 198.19.0.20:80
	// tcp 198.19.0.10:1024 -> 10.0.0.2:8080
	// fastpath: replayed nonce
}
