package bpf

// The XDP program is compiled with clang by bpf2go; the generated Go files
// and objects are committed, so building the package needs no clang. To
// rebuild them: apt-get install clang llvm libbpf-dev; go generate ./bpf
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go@v0.22.0 -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type mux_config -type flow_key -type flow -type vip -type endpoint_key -type endpoint -type backend -type snat_key muxXDP c/mux.c
