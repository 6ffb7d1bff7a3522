from iceprod_server.cli.main import main

main()
