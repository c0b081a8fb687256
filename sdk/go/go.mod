module github.com/run-dat-sheesh/rds/sdk/go

go 1.19
