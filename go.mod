module github.com/ananta-go/ananta

go 1.26
