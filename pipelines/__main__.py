from dinolab.pipelines.cli import main

main()
