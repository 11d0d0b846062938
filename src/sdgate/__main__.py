from sdgate.cli.main import main

main()
