module github.com/ananta-go/ananta

go 1.26.0

require golang.org/x/sys v0.50.0
