from iceprod_server.pilot.main import main

main()
