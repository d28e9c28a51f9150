package agent_test

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ananta-go/ananta/hostagent"
	"github.com/ananta-go/ananta/manager/agent"
	"github.com/ananta-go/ananta/mux"
)

// A Mux follows the Manager through a Client.
func Example() {
	var m *mux.Mux // built with mux.New
	c, err := agent.New(agent.Config{
		Addrs:  []string{"127.0.0.1:7000", "127.0.0.2:7000", "127.0.0.3:7000"},
		ID:     "mux-1",
		Kind:   agent.KindMux,
		Target: agent.MuxTarget(m),
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a real daemon runs until it is told to stop
	c.Run(ctx)
}

// A Host Agent leases its SNAT ports from the Manager.
func ExampleSNATClient() {
	conn, err := grpc.NewClient("127.0.0.1:7000", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	var alloc hostagent.PortAllocator = agent.NewSNATClient(conn)
	_ = alloc // hostagent.Config's allocator
}
