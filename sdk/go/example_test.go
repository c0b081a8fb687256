package rds_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	rds "github.com/run-dat-sheesh/rds/sdk/go"
)

func Example() {
	ctx := context.Background()
	client := rds.NewClient("", "") // $RDS_URL, $RDS_API_KEY
	sb, err := rds.CreateSandbox(ctx, client, rds.CreateVM{CPU: 1, MemMB: 256})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(ctx)

	res, err := sb.Exec(ctx, "echo hello; id -u")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout)

	run, err := sb.RunPython(ctx, "result = {'sum': 1 + 2}")
	if err != nil {
		log.Fatal(err)
	}
	var out struct{ Sum int }
	if err := run.Decode(&out); err != nil {
		log.Fatal(err)
	}
	fmt.Println("sum:", out.Sum)
	// Output:
	// hello
	// 1000
	// sum: 3
}

func ExampleCodeContext() {
	ctx := context.Background()
	sb, err := rds.CreateSandbox(ctx, rds.NewClient("", ""), rds.CreateVM{})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Kill(ctx)

	py, err := sb.Context(ctx, "python")
	if err != nil {
		log.Fatal(err)
	}
	defer py.Delete(ctx)
	if _, err := py.Run(ctx, "import statistics\ndata = [3, 1, 4, 1, 5]"); err != nil {
		log.Fatal(err)
	}
	median, err := py.Run(ctx, "statistics.median(data)")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(median.Result))
	// Output: 3
}

func ExampleError() {
	ctx := context.Background()
	_, err := rds.NewClient("", "").GetVM(ctx, "no-such-vm")
	var e *rds.Error
	if errors.As(err, &e) && errors.Is(err, rds.ErrNotFound) {
		fmt.Println(e.Status, e.Code)
	}
	// Output: 404 not_found
}
