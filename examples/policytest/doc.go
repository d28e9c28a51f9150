// Package policytest is an example to copy: policy_test.go tests a VIP's
// load-balancing policy (backend weights, draining a backend, an ACL)
// against an in-memory deployment of package anantatest, with the same API
// calls a cloud controller makes in production. It needs no root and runs
// in well under a second.
package policytest
