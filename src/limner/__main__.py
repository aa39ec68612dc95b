from limner.cli.main import main

main()
